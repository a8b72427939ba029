"""Collect bench_*.py here as test modules (pytest's default python_files is test_*.py), and
put malloc in the same state as `dll-ext bench` does.

The root pyproject keeps testpaths = ["tests"], so a plain `pytest` never runs these;
`pytest benchmarks/` does.
"""
import pytest


def pytest_collect_file(file_path, parent):
    # A file named on the command line is collected by pytest itself whatever its name.
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture(scope="session", autouse=True)
def _steady_state_malloc():
    from dll_ext.benchmark.harness import steady_state_malloc

    print(f"\nmalloc: {steady_state_malloc()}")
