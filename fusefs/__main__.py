from fusefs.cli import main

main()
