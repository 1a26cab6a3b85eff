;; infinite_loop: never returns; stopped by fuel or by the epoch deadline.
(module
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "run") (param i32 i32) (result i64)
    (loop $spin (br $spin))
    (i64.const 0)))
