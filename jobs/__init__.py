"""PyFlink job entry points: each exposes build(t_env, config) and a main()."""
