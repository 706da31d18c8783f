module pisec.example/hello-go

go 1.22
