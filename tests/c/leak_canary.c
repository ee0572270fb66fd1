/* Not a test of the library: proves the memory checker in scripts/test-c catches a leak. It
 * leaks one library string on purpose; the script expects the checker to fail on it. */
#include <stdio.h>

#include "iris_rpc.h"

int main(void) {
    char *key = NULL, *cert = NULL;
    if (iris_self_signed_pem(&key, &cert) != IRIS_OK) return 2;
    iris_string_free(cert);
    key = NULL; /* the key PEM is now unreachable: a definite leak */
    puts("leaked one string on purpose");
    return 0;
}
