"""itsmesh processes: one package per service, plus the `itsmesh` command."""
