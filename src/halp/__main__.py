from halp.cli.main import main

raise SystemExit(main())
