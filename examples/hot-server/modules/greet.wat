;; A route of examples/hot-server that depends on a library: GET /greet/
;; answers the greeting of example:text/greeting (lib/text.wat).
(component
  (import "example:text/greeting" (instance $text (export "greeting" (func (result string)))))
  (alias export $text "greeting" (func $greeting))
  ;; Memory and allocator come first, in a module of their own: the
  ;; lowered import needs them, and the main module needs the import.
  (core module $Mem
    (memory (export "memory") 1)
    (global $heap (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) (local $p i32)
      (local.set $p (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
      (global.set $heap (i32.add (local.get $p) (local.get 3)))
      (local.get $p)))
  (core instance $mem (instantiate $Mem))
  (core func $greeting-low (canon lower (func $greeting)
    (memory (core memory $mem "memory")) (realloc (core func $mem "realloc"))))
  (core module $Main
    (import "mem" "realloc" (func $realloc (param i32 i32 i32 i32) (result i32)))
    (import "mem" "memory" (memory 1))
    (import "lib" "greeting" (func $greeting (param i32)))
    ;; handle(method, path) -> (status, body): the greeting is written to
    ;; offset 4 of the 12-byte result area, right where the body goes.
    (func (export "handle") (param i32 i32 i32 i32) (result i32) (local $ret i32)
      (local.set $ret (call $realloc (i32.const 0) (i32.const 0) (i32.const 4) (i32.const 12)))
      (call $greeting (i32.add (local.get $ret) (i32.const 4)))
      (i32.store16 (local.get $ret) (i32.const 200))
      (local.get $ret)))
  (core instance $main (instantiate $Main
    (with "mem" (instance $mem))
    (with "lib" (instance (export "greeting" (func $greeting-low))))))
  (func (export "handle") (param "method" string) (param "path" string) (result (tuple u16 string))
    (canon lift (core func $main "handle")
      (memory (core memory $mem "memory")) (realloc (core func $mem "realloc")))))
