"""The method contract for test suites (peft-bench's own and outside plugins'): see ``contract``."""

from peft_bench.testing.contract import (  # noqa: F401
    TINY_MODELS, Trained, check_loss_falls, check_method, check_only_intended_parameters_change,
    check_parameter_counts, check_reloads_identically, check_serving, rows_of_different_lengths,
    three_task_server, tiny_spec, train_tiny,
)
