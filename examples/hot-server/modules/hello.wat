;; A route of examples/hot-server, by hand in WAT: GET /hello/REST answers
;; "hello from WAT: REST". Edit the greeting below while the server runs
;; and the next request gets the new version.
(component
  (core module $Main
    (memory (export "memory") 1)
    (global $heap (mut i32) (i32.const 4096))
    (data (i32.const 16) "hello from WAT: ")
    ;; the canonical ABI's allocator: a bump allocator is enough, since
    ;; every call gets a fresh instance
    (func $realloc (export "realloc") (param i32 i32 i32 i32) (result i32) (local $p i32)
      (local.set $p (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
      (global.set $heap (i32.add (local.get $p) (local.get 3)))
      (if (i32.gt_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536)))
        (then (drop (memory.grow (i32.add (i32.shr_u (global.get $heap) (i32.const 16)) (i32.const 1))))))
      (local.get $p))
    ;; handle(method, path) -> (status, body): the result goes through a
    ;; 12-byte area: u16 status at 0, body pointer at 4, length at 8
    (func (export "handle") (param $m i32) (param $ml i32) (param $p i32) (param $pl i32) (result i32)
      (local $body i32) (local $ret i32)
      (local.set $body (call $realloc (i32.const 0) (i32.const 0) (i32.const 1)
        (i32.add (local.get $pl) (i32.const 17))))
      (memory.copy (local.get $body) (i32.const 16) (i32.const 16))
      (memory.copy (i32.add (local.get $body) (i32.const 16)) (local.get $p) (local.get $pl))
      (i32.store8 (i32.add (local.get $body) (i32.add (local.get $pl) (i32.const 16))) (i32.const 10))
      (local.set $ret (call $realloc (i32.const 0) (i32.const 0) (i32.const 4) (i32.const 12)))
      (i32.store16 (local.get $ret) (i32.const 200))
      (i32.store offset=4 (local.get $ret) (local.get $body))
      (i32.store offset=8 (local.get $ret) (i32.add (local.get $pl) (i32.const 17)))
      (local.get $ret)))
  (core instance $main (instantiate $Main))
  (func (export "handle") (param "method" string) (param "path" string) (result (tuple u16 string))
    (canon lift (core func $main "handle") (memory (core memory $main "memory")) (realloc (core func $main "realloc")))))
