/*
 * Differential-test driver for tests/ring_diff.rs: runs a script of ring
 * operations through Xen's own xen/io/ring.h macros and prints, after
 * every operation, its result and the 64-byte shared ring header.
 *
 *   ring_driver <blkif|netif_tx|netif_rx|small> <ring bytes> < script
 *
 * The ring types are the real ones from blkif.h and netif.h, plus a small
 * custom pair whose union (6 bytes) is larger than either member.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * The interface version and barriers a ring.h user supplies. The driver is
 * single-threaded, so the barriers only document; they are the same
 * fences the Rust ring uses.
 */
#define __XEN_INTERFACE_VERSION__ 0x00040e00
#define xen_mb()  __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define xen_rmb() __atomic_thread_fence(__ATOMIC_ACQUIRE)
#define xen_wmb() __atomic_thread_fence(__ATOMIC_RELEASE)

#include <xen/io/ring.h>
#include <xen/io/blkif.h>
#include <xen/io/netif.h>

struct small_req { uint8_t b[5]; };
struct small_rsp { uint16_t id; };
DEFINE_RING_TYPES(small, struct small_req, struct small_rsp);

static int parse_hex(const char *s, void *out, size_t n)
{
    uint8_t *o = out;
    for (size_t i = 0; i < n; i++) {
        unsigned int v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1)
            return -1;
        o[i] = (uint8_t)v;
    }
    return 0;
}

static void print_hex(const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        printf("%02x", b[i]);
}

/* FNV-1a, 64 bit. */
static uint64_t fnv1a(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)

#define RING blkif
#define REQ_T struct blkif_request
#define RSP_T struct blkif_response
#include "ring_driver_body.h"
#undef RING
#undef REQ_T
#undef RSP_T

#define RING netif_tx
#define REQ_T struct netif_tx_request
#define RSP_T struct netif_tx_response
#include "ring_driver_body.h"
#undef RING
#undef REQ_T
#undef RSP_T

#define RING netif_rx
#define REQ_T struct netif_rx_request
#define RSP_T struct netif_rx_response
#include "ring_driver_body.h"
#undef RING
#undef REQ_T
#undef RSP_T

#define RING small
#define REQ_T struct small_req
#define RSP_T struct small_rsp
#include "ring_driver_body.h"
#undef RING
#undef REQ_T
#undef RSP_T

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s <blkif|netif_tx|netif_rx|small> <ring bytes>\n", argv[0]);
        return 2;
    }
    size_t bytes = strtoul(argv[2], NULL, 0);
    if (strcmp(argv[1], "blkif") == 0)
        return run_blkif(bytes);
    if (strcmp(argv[1], "netif_tx") == 0)
        return run_netif_tx(bytes);
    if (strcmp(argv[1], "netif_rx") == 0)
        return run_netif_rx(bytes);
    if (strcmp(argv[1], "small") == 0)
        return run_small(bytes);
    fprintf(stderr, "unknown ring type %s\n", argv[1]);
    return 2;
}
