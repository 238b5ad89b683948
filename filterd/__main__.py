from filterd.cli import main

raise SystemExit(main())
