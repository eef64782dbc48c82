/*
 * The driver loop for one ring type; included by ring_driver.c with RING
 * (the DEFINE_RING_TYPES tag), REQ_T and RSP_T defined.
 */

static int CAT(run_, RING)(size_t bytes)
{
    struct CAT(RING, _sring) *s = aligned_alloc(4096, (bytes + 4095) & ~(size_t)4095);
    struct CAT(RING, _front_ring) f;
    struct CAT(RING, _back_ring) b;
    char line[8192];
    unsigned long lineno = 0;

    if (s == NULL) {
        perror("aligned_alloc");
        return 1;
    }
    memset(s, 0, bytes);
    memset(&f, 0, sizeof(f));
    memset(&b, 0, sizeof(b));

    while (fgets(line, sizeof(line), stdin) != NULL) {
        char op[32];
        char arg[8192];
        int n;

        lineno++;
        line[strcspn(line, "\n")] = '\0';
        arg[0] = '\0';
        n = sscanf(line, "%31s %8191s", op, arg);
        if (n < 1) {
            fprintf(stderr, "line %lu: empty\n", lineno);
            return 1;
        }

        if (strcmp(op, "init") == 0) {
            XEN_FRONT_RING_INIT(&f, s, bytes);
            BACK_RING_INIT(&b, s, bytes);
            printf("size=%u", RING_SIZE(&f));
        } else if (strcmp(op, "attach") == 0) {
            RING_IDX i = (RING_IDX)strtoul(arg, NULL, 0);
            SHARED_RING_INIT(s);
            s->req_prod = s->rsp_prod = i;
            s->req_event = s->rsp_event = i + 1;
            FRONT_RING_ATTACH(&f, s, i, bytes);
            BACK_RING_ATTACH(&b, s, i, bytes);
            printf("size=%u", RING_SIZE(&f));
        } else if (strcmp(op, "put_req") == 0) {
            if (parse_hex(arg, RING_GET_REQUEST(&f, f.req_prod_pvt), sizeof(REQ_T)) != 0) {
                fprintf(stderr, "line %lu: bad hex\n", lineno);
                return 1;
            }
            f.req_prod_pvt++;
            printf("ok");
        } else if (strcmp(op, "push_req") == 0) {
            RING_PUSH_REQUESTS(&f);
            printf("ok");
        } else if (strcmp(op, "push_req_notify") == 0) {
            int notify;
            RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&f, notify);
            printf("notify=%d", notify);
        } else if (strcmp(op, "free") == 0) {
            printf("free=%u full=%d", RING_FREE_REQUESTS(&f), RING_FULL(&f));
        } else if (strcmp(op, "front_unconsumed") == 0) {
            printf("unconsumed=%u", RING_HAS_UNCONSUMED_RESPONSES(&f));
        } else if (strcmp(op, "front_consume") == 0) {
            RSP_T rsp;
            memset(&rsp, 0, sizeof(rsp));
            RING_COPY_RESPONSE(&f, f.rsp_cons, &rsp);
            f.rsp_cons++;
            print_hex(&rsp, sizeof(rsp));
        } else if (strcmp(op, "get_rsp") == 0) {
            RSP_T rsp;
            memset(&rsp, 0, sizeof(rsp));
            RING_COPY_RESPONSE(&f, (RING_IDX)strtoul(arg, NULL, 0), &rsp);
            print_hex(&rsp, sizeof(rsp));
        } else if (strcmp(op, "final_rsp") == 0) {
            int work;
            RING_FINAL_CHECK_FOR_RESPONSES(&f, work);
            printf("work=%d", !!work);
        } else if (strcmp(op, "back_unconsumed") == 0) {
            printf("unconsumed=%u", RING_HAS_UNCONSUMED_REQUESTS(&b));
        } else if (strcmp(op, "back_consume") == 0) {
            REQ_T req;
            memset(&req, 0, sizeof(req));
            RING_COPY_REQUEST(&b, b.req_cons, &req);
            b.req_cons++;
            print_hex(&req, sizeof(req));
        } else if (strcmp(op, "get_req") == 0) {
            REQ_T req;
            memset(&req, 0, sizeof(req));
            RING_COPY_REQUEST(&b, (RING_IDX)strtoul(arg, NULL, 0), &req);
            print_hex(&req, sizeof(req));
        } else if (strcmp(op, "cons_overflow") == 0) {
            printf("overflow=%d",
                   RING_REQUEST_CONS_OVERFLOW(&b, (RING_IDX)strtoul(arg, NULL, 0)) ? 1 : 0);
        } else if (strcmp(op, "put_rsp") == 0) {
            if (parse_hex(arg, RING_GET_RESPONSE(&b, b.rsp_prod_pvt), sizeof(RSP_T)) != 0) {
                fprintf(stderr, "line %lu: bad hex\n", lineno);
                return 1;
            }
            b.rsp_prod_pvt++;
            printf("ok");
        } else if (strcmp(op, "push_rsp") == 0) {
            RING_PUSH_RESPONSES(&b);
            printf("ok");
        } else if (strcmp(op, "push_rsp_notify") == 0) {
            int notify;
            RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&b, notify);
            printf("notify=%d", notify);
        } else if (strcmp(op, "final_req") == 0) {
            int work;
            RING_FINAL_CHECK_FOR_REQUESTS(&b, work);
            printf("work=%d", !!work);
        } else if (strcmp(op, "hash") == 0) {
            printf("hash=%016llx", (unsigned long long)fnv1a(s, bytes));
        } else {
            fprintf(stderr, "line %lu: unknown op %s\n", lineno, op);
            return 1;
        }
        printf(" | ");
        print_hex(s, offsetof(struct CAT(RING, _sring), ring));
        printf("\n");
    }
    free(s);
    return 0;
}
