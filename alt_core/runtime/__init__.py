"""The processes jobs run in: the one launcher (`launcher`) and the child entry point
(`entry`), device slots (`slots`), host settings read from the environment (`env`),
progress lines (`progress`) and fault-injection hooks (`faults`)."""
