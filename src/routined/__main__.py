from routined.cli import main

main()
