from niti.cli import main

raise SystemExit(main())
