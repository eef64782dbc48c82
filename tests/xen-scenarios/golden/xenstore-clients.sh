# Xen's xenstore-* clients in dom0, run against a xenstore daemon.
# Its output (stdout and stderr, with exit statuses) must equal
# xenstore-clients.out, captured with Xen's C xenstored.
r=/rxen-golden
st() { echo "status $?"; }
xenstore-write $r/a 1 $r/b/c 2 $r/b/d "with space"; st
xenstore-read $r/a $r/b/c $r/b/d; st
xenstore-read $r/b; st
xenstore-list $r; st
xenstore-list $r/b; st
xenstore-ls $r; st
xenstore-ls -p $r; st
xenstore-chmod $r/b n0 r1 w2 b3; st
xenstore-ls -p $r; st
xenstore-chmod -r $r/b n0 r5; st
xenstore-ls -p $r; st
xenstore-chmod $r/b r5 n0; st
xenstore-ls -p $r; st
xenstore-exists $r/b/c; st
xenstore-read $r/missing; st
xenstore-rm $r/missing; st
xenstore-list $r/missing; st
xenstore-write $r/empty ""; st
xenstore-read $r/empty; st
xenstore-write $r/a 10; st
xenstore-read $r/a; st
xenstore-rm $r/b/c; st
xenstore-exists $r/b/c; st
xenstore-list $r/b; st
xenstore-rm $r/b; st
xenstore-ls -p $r; st
xenstore-rm $r; st
xenstore-exists $r; st
xenstore-read /local/domain/0/name; st
xenstore-read /local/domain/0/domid; st
