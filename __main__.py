from emlive.cli import main

main()
