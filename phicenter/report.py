"""`python -m phicenter.report DIR [DIR...]`: the paper's tables from a grid (phicenter.analysis.report)."""

from phicenter.analysis.report import main

if __name__ == "__main__":
    raise SystemExit(main())
