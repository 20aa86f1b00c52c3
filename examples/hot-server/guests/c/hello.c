/* A route of examples/hot-server in C (clang + wasi-libc, no WASI calls).
 *
 * The canonical ABI by hand: the host passes each string as (pointer,
 * length) in memory it allocated with cabi_realloc; handle returns a
 * pointer to the tuple<u16, string> result: u16 status at 0, body pointer
 * at 4, body length at 8. guests/build wraps the module in a component. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define GREETING "hello from C: "

__attribute__((export_name("cabi_realloc")))
void *cabi_realloc(void *ptr, size_t old_size, size_t align, size_t new_size) {
    (void)old_size;
    (void)align; /* malloc's alignment (16) covers every canonical ABI type */
    return realloc(ptr, new_size);
}

struct answer {
    uint16_t status;
    const char *body;
    size_t len;
};

static struct answer answer;
static char body[1024];

static size_t put(size_t at, const char *s, size_t n) {
    if (at + n > sizeof body)
        n = sizeof body - at;
    memcpy(body + at, s, n);
    return at + n;
}

__attribute__((export_name("handle")))
struct answer *handle(const char *method, size_t method_len, const char *path, size_t path_len) {
    size_t n = put(0, GREETING, sizeof GREETING - 1);
    n = put(n, method, method_len);
    n = put(n, " ", 1);
    n = put(n, path, path_len);
    n = put(n, "\n", 1);
    answer.status = 200;
    answer.body = body;
    answer.len = n;
    return &answer;
}
