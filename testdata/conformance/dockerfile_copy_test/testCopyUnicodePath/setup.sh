printf foo > 'test-äöü.txt'
printf bar > 'test-%C3%A4%C3%B6%C3%BC.txt'
printf baz > 'test+aou.txt'
