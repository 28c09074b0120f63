from spibatch.cli import main

main()
