// dll_ext._C is an empty Python module: importing it loads this library, whose static
// initialisers register the ops with the dispatcher. Everything else is reached through
// torch.ops.dll_ext. Kept apart from the op sources, which never include Python headers, so
// the same sources build the Python-free libdll_ext_ops.so (CMakeLists.txt).
#include <Python.h>

static PyModuleDef dll_ext_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&dll_ext_module); }
