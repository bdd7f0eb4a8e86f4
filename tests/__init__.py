import pytest

# Plain asserts in the shared helpers report their operands like asserts in tests do.
pytest.register_assert_rewrite("tests.helpers")
