/* The template plugin with one defect: it claims ADD on f32 but computes
 * a - b. `kiln conform` must report the ADD claim as failing (and pass the
 * rest). Everything else is plugins/template/template.c unchanged. */
#define KT_ADD(a, b) ((a) - (b))
#include "../../plugins/template/template.c"
