from procres.cli import main

raise SystemExit(main())
