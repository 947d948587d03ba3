from equipwatch.cli import main

raise SystemExit(main())
