"""Ray Tune sweeps of bigtrain training runs."""
