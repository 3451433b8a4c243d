from noroshi.cli import main

main()
