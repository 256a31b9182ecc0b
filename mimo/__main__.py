from mimo.cli.main import main

raise SystemExit(main())
