
FROM busybox:latest
COPY <<-"EOF" /scan.sh
	set -e
	cat <<BUNDLE > $BUILDKIT_SCAN_DESTINATION/spdx.json
	{
	  "_type": "https://in-toto.io/Statement/v1",
	  "predicateType": "https://spdx.dev/Document",
	  "predicate": {"name": "core"}
	BUNDLE
	if [ "${BUILDKIT_SCAN_SOURCE_EXTRAS}" ]; then
		for src in "${BUILDKIT_SCAN_SOURCE_EXTRAS}"/*; do
			cat <<BUNDLE > $BUILDKIT_SCAN_DESTINATION/$(basename $src).spdx.json
			{
			  "_type": "https://in-toto.io/Statement/v1",
			  "predicateType": "https://spdx.dev/Document",
			  "predicate": {"name": "extra"}
			BUNDLE
		done
	fi
EOF
CMD sh /scan.sh
