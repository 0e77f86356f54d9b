"""What to test and how to run it: the Case model, input regimes, hypothesis strategies, the
regression corpus, dispatch expectations and the runner (case x kernel -> Result)."""
