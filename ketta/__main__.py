from ketta.cli import main

main()
