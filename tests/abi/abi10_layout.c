/*
 * abi10_layout.c - the layout of plugin ABI 1.0, measured from the frozen
 * headers of tests/abi/v1.0/ (this file is compiled with that include
 * directory and not api/include). test_abi.c compares it with the current
 * headers.
 */
#include <stddef.h>

#include "abi_fields.h"
#include "kiln/plugin.h"

#define FIELD(s, f) {#s "." #f, offsetof(s, f), sizeof(((s *)0)->f)},
#define STRUCT(s) {"sizeof " #s, sizeof(s), 0},
#define CONSTANT(c) {#c, (unsigned long long)(c), 0},

const abi_item abi10_fields[] = {ABI_FIELDS_1_0(FIELD)};
const abi_item abi10_structs[] = {ABI_STRUCTS_1_0(STRUCT)};
const abi_item abi10_constants[] = {ABI_CONSTANTS_1_0(CONSTANT)};
const int abi10_n_fields = sizeof abi10_fields / sizeof abi10_fields[0];
const int abi10_n_structs = sizeof abi10_structs / sizeof abi10_structs[0];
const int abi10_n_constants = sizeof abi10_constants / sizeof abi10_constants[0];
const char abi10_entry_name[] = KILN_PLUGIN_ENTRY_NAME;
