;; A library of examples/hot-server: it exports the interface
;; example:text/greeting, which routes import (see ../greet.wat). Change
;; the greeting and every route that imports it is re-linked and switches
;; with it, or, if one of them fails with the new version, none does.
(component
  (core module $Lib
    (memory (export "memory") 1)
    (data (i32.const 16) "bonjour from the text library")
    ;; The string result goes through an 8-byte (pointer, length) area.
    (func (export "greeting") (result i32)
      (i32.store (i32.const 0) (i32.const 16))
      (i32.store (i32.const 4) (i32.const 29))
      (i32.const 0)))
  (core instance $lib (instantiate $Lib))
  (func $greeting (result string) (canon lift (core func $lib "greeting") (memory (core memory $lib "memory"))))
  (instance $greeting-iface (export "greeting" (func $greeting)))
  (export "example:text/greeting" (instance $greeting-iface)))
