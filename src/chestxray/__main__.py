from chestxray.cli import main

main()
