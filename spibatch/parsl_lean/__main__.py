from spibatch.parsl_lean import main

main()
