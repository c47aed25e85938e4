from ipa.cli import main

main()
