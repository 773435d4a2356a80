from etl.app.cli import main

main()
