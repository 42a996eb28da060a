from gpt_novel.cli import main

raise SystemExit(main())
