from spunge_merge.cli import main

main()
