from cigl_bayes.cli import main

main()
