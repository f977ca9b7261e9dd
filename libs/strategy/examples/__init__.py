"""Four strategies a prop trader would recognise, each with typed params.

They live in ``libs/`` (not in the runner service) because the backtest
harness runs the very same classes in-process, and ``libs/`` never imports a
service. ``strategies.yaml`` names them by kind (``libs.strategy.registry``).
"""
