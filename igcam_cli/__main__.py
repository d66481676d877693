from igcam_cli.cli import main

raise SystemExit(main())
