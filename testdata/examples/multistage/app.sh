#!/bin/sh
echo "app built at stage app"
