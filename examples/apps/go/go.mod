module baton.example/server

go 1.19
