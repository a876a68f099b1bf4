"""`python -m radixserve ...` is the same as the `radixserve` command."""
import sys

from radixserve.cli import main

sys.exit(main())
