"""A run's report: the self-contained HTML page (`html`) and its plots (`plots`)."""
