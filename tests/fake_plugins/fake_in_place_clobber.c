/* The template plugin with one defect: it claims ADD in place
 * (KILN_OP_SUPPORT_IN_PLACE) but clears the output before reading its
 * inputs and writes it without the template's scratch copy, so an output on
 * an input's bytes destroys that input. ADD is right
 * with separate bytes; `kiln conform` must still fail the claim (and pass
 * the rest). Everything else is plugins/template/template.c unchanged. */
#include <string.h>
#define KT_IN_PLACE(op) ((op) == KILN_OP_ADD)
#define KT_BINARY_START(y, n) memset((y), 0, (size_t)(n) * sizeof(float))
#define KT_SCRATCH_ON_OVERLAP 0
#include "../../plugins/template/template.c"
