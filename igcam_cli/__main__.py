from igcam_cli.cli import main

main()
