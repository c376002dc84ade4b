from sandbox.aws.main import main

main()
