from ipwatch.cli import main

raise SystemExit(main())
