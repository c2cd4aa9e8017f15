"""Reports: tables, figures and output files for sweeps and evaluations."""
