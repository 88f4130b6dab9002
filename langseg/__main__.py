from langseg.cli import main

main()
